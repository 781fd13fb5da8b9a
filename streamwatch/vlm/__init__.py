"""Vision-language tier: personas, backends (local templates for now) and the audience responder."""
