"""The simulated side of each channel's API, one module per channel (``side.ChannelSide``)."""
