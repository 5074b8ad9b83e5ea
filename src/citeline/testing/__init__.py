"""Contract suites that every implementation of an extension point runs, built-in or third-party."""
