"""The pulumi_stack inventory plugin and the credentials printer that shares its outputs loader."""
