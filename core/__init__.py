"""What a call is and what it costs, with no web framework in it (a test asserts so)."""
