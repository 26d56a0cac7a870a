"""Operator CLI groups: one module per command group, no logic of their own."""
