"""Reconciliation against the channels' statements (``switch.recon.batch``) and its command line
(``switch.recon.cli``)."""
