"""Settings and the model catalogue file."""
