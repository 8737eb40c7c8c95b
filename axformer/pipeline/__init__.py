"""The end-to-end ``axformer optimize`` command: configuration, stages with resume, and the HTML report."""
