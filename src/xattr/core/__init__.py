"""The bottom of the house: the low-level pieces every other package uses, each in one place.

- :mod:`.hooks`: freezing parameters, hooked forwards, capturing a layer's output, counting hooks;
- :mod:`.seeding`: forked global RNG, one generator per image (batched == one at a time), noise;
- :mod:`.layers`: the papers' layer names <-> module paths, resolved once into a :class:`~.layers.Layer`;
- :mod:`.checks`: one-line validation of hyper-parameters, a module's device;
- :mod:`.chunk`: the one memory knob, ``chunk`` (int | null | auto), validated and resolved;
- :mod:`.params`: the arguments a method or metric was built with (``hparams``);
- :mod:`.store`: the run folder (per-batch files, resume, reading back without writing);
- :mod:`.trainer`: the one Lightning ``Trainer`` factory and the loggers (``run``, ``train``, Readout IBA);
- :mod:`.preprocess`, :mod:`.labels`, :mod:`.vocab`: how inputs are encoded, shared by ``data`` and
  ``models`` (which never import each other);
- :mod:`.summary`: mean and standard error of per-image scores.

``xattr.core`` imports nothing of xattr but :mod:`xattr.errors` (tests/test_architecture.py checks it).
"""
