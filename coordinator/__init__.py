"""Operator side: Flower ServerApp workflows, estimators over aggregates, evidence reports."""
