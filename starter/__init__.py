"""The starter library (TaskomaticClient) and the taskomatic CLI."""
