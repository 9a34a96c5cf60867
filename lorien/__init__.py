"""The ``lorien`` command: argument parsing and the end-to-end demo, gluing ``publisher``, ``repo`` and
``device`` together. Library code lives in those packages; this one only wires them up."""
