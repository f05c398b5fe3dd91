"""Quickstart placeholder replaced as features land."""
