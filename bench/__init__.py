"""`make bench`: the gateway as deployed vs. the bare stack vs. the upstream directly."""
