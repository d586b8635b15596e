"""The learner inside other stream processors (each behind its own optional extra)."""
