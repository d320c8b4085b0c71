"""flipnet.pipelines."""
