"""Limits: admission (rate windows and concurrency slots), token budgets and their Redis storage."""
