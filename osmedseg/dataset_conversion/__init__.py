"""Converters from published layouts to a raw osmedseg dataset (atlas + unlabeled + test).

Each layout module (``folders``, ``oasis``, ``abdomen``, ``verse``, ``nnunet``) has a ``collect(...)`` that finds the
source cases and returns a :class:`~osmedseg.dataset_conversion.source.Source`;
:func:`~osmedseg.dataset_conversion.writer.convert_dataset` writes any source the same way.
"""
