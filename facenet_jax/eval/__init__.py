"""Retrieval evaluation: metrics, re-ranking, protocols, the Evaluator, the report, pictures."""
