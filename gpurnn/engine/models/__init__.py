"""The models users build: the Elman and linear RNNs (``model``), models by cell name
(``factory``), weights to and from PyTorch (``torch_interop``), parameter names and the
checked parameter dict (``parameters``) and the output layer with its losses (``losses``)."""
