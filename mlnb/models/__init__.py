"""Model CD: registered versions with their lineage, the gate, and the aliases it moves."""
