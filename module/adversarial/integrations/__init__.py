"""Plug-ins that add any registry method to training loops that are not ours.

* ``module.adversarial.integrations.hf_trainer``: ``AdversarialTrainer`` / ``AdversarialTrainerMixin`` for
  ``transformers.Trainer``;
* ``module.adversarial.integrations.fastai``: ``SMARTCallback``, ``ALUMCallback`` and
  ``AdversarialCallback`` for a fastai ``Learner`` (needs the optional extra, ``requirements-fastai.txt``).

Nothing is imported here, so importing the package never needs an optional dependency.
"""
