"""How cells become layers: stacks and the layered models (``stack``), bidirectional stacks
(``bidirectional``), the token embedding (``embedding``) and dropout (``dropout``)."""
