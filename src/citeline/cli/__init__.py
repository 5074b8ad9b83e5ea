"""citeline command line."""
