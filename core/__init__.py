"""Shared types and interfaces: the only package that the daemon, the fusion decoders and the tools all import."""
