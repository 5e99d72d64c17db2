"""What the tests share: helpers, the model-card oracle, servers and processes they start."""
