"""Fake providers: real HTTP servers on loopback speaking each provider's documented format."""
