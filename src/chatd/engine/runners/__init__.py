"""Runners: run a batch of sequences through a model and give logits back."""
