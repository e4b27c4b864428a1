"""Exporters of run directories to other tools' formats."""
