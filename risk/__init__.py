"""Risk control before the channel: rules as data (``risk.rules``), decided in memory
(``risk.engine``) against the black and grey lists (``risk.lists``), reloaded live
(``risk.control``), counted across front ends by the risk actors (``risk.actor``). Nothing is
imported here: ``switch.config`` reads ``risk.rules``, and every command reads the configuration,
so an import here would load Ray into each of them."""
