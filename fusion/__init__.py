"""Uncertainty-aware dynamic fusion (UADF) of streaming Whisper with a small causal LLM.

Importing the package is cheap: the LLM stack (torch, transformers) loads in `fusion.factory`.
"""
