"""Servers that stand in for services nothing real of can run on a test machine, each speaking the
service's own wire protocol so that the code under test runs its real client libraries."""
