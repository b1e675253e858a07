"""QGIS Processing glue for ISMoE: thin algorithms over the core (data/, model/)."""
