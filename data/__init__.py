"""Dataset fetching (`python -m data.fetch`); the data itself (data/Flipkart/) is git-ignored."""
