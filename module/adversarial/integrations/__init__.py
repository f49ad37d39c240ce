"""Plug-ins that add any registry method to training loops that are not ours.

* ``module.adversarial.integrations.hf_trainer``: ``AdversarialTrainer`` / ``AdversarialTrainerMixin`` for
  ``transformers.Trainer``;
* ``module.adversarial.integrations.fastai``: ``SMARTCallback``, ``ALUMCallback`` and
  ``AdversarialCallback`` for a fastai ``Learner`` (needs the optional extra, ``requirements-fastai.txt``);
* ``common``: what both share (divergences by name, the Bregman switch); ``replay``: FreeAT's replays as a
  sampler, for loops that take one optimizer step per batch.

Nothing is imported here, so importing the package never needs an optional dependency.
"""
