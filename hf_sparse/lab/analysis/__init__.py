"""How much of the dense model's attention each pattern keeps, per layer and head, at equal density
(``recall``), the models and inputs it runs on (``sources``), pattern options for a target density
(``budget``) and pictures of what each head kept (``pictures``). ``hf-sparse analyze`` and
``hf-sparse train-gate`` are its commands."""
