"""Approximate attention: AxFormer's top-K hard attention (and, later, sign-matching attention), per layer."""
