"""Measure why normalization helps, on any model: activation statistics and
gradient flow over training (:class:`Monitor`), internal covariate shift as
Ioffe & Szegedy described it (:meth:`Monitor.distribution_shift`) and as
Santurkar et al. measured it (:func:`internal_covariate_shift`), and the
smoothness of the loss landscape (:func:`loss_landscape`)."""

from normlab.monitor.monitor import Monitor, unrecorded
from normlab.monitor.probes import Probe, internal_covariate_shift, loss_landscape, preserved_state

__all__ = [
    "Monitor",
    "Probe",
    "internal_covariate_shift",
    "loss_landscape",
    "preserved_state",
    "unrecorded",
]
