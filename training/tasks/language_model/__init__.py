"""The character language model: CharLSTM on Tiny Shakespeare, truncated BPTT, next-character loss."""
