"""nginx templates (``*.j2``) shipped as package data of ``lorien.nginx``; ``lorien nginx-config`` renders them."""
