"""Fitting the head model to images: landmark correspondence, one-image fit, video tracking."""
