"""Proposal makers: baselines and torch generative models behind one interface."""
