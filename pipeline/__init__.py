"""The top floor: ``cai run`` (a whole loop from one pipeline file) and ``cai eval winrate``.

Imports every stage package; nothing below imports this one."""
