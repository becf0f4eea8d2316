"""The report floor: ``cai report`` (one self-contained HTML page from run directories) and the tools for
people editing a constitution (``cai constitution diff`` / ``try``). Top floor: imports every stage."""
