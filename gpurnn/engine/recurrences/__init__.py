"""What one time step computes and its vector–Jacobian products: the cell protocol and the
Elman cell (``cells``), GRU and LSTM (``gated``), their layer-normalised forms
(``normalized``), the diagonal cells minGRU, minLSTM and LRU (``diagonal``), and the
activations they use (``activations``)."""
