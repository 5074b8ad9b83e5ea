"""The extension points' contracts: one small module per Protocol, importing nothing else of citeline."""
