"""Small building blocks shared by the model files (norms, fused linears, rotary embedding)."""
