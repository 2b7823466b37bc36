"""Test helpers shared across suites: real servers started on loopback for the tests."""
