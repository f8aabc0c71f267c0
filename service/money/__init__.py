"""Money: credits, holds and settles, budgets, the settle journal, alerts and ledger marks."""
