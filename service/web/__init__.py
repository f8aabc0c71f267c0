"""The web layer: the blueprints, the console and everything that reads flask's request and g."""
