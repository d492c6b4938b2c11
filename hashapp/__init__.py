"""hashapp: the application layer over the torch-free core (:mod:`hashindex`) and the torch
models (:mod:`encoders`): the train / encode / index pipeline, queries, the demo, evaluation
and the ``hashindex`` command line. Only this package imports both."""
