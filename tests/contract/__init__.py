"""Contract suites: one behaviour spec run against every implementation of an interface."""
