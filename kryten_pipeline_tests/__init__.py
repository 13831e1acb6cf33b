"""Tests for kryten-pipeline (real nats-server, redis-server, PostgreSQL and HTTP servers on loopback)."""
