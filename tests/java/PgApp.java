// pgJDBC (Debian's libpostgresql-jdbc-java) as an application uses it, for
// tests/it/apps/drivers.rs:
//
//     java -cp /usr/share/java/postgresql.jar:DIR PgApp JDBC_URL PREFIX
//
// Writes PREFIX_acct and PREFIX_item (created by the caller) with server-side prepared
// statements from the first execution (prepareThreshold=1: later executions send only
// Bind/Execute, and the driver then reads DataRows against the description it cached),
// binary transfer, untyped parameters (stringtype=unspecified), generated keys, batches,
// and transactions outside autocommit, where the driver sends BEGIN in the same pipeline
// as the first statement: committed, rolled back, failed on a constraint, with savepoints.
// Prints one line per observation, then the tables; exits 1 when an observation is wrong on
// its own.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.Properties;

public class PgApp {
    static void emit(String s) {
        System.out.println(s);
    }

    static void expect(boolean cond, String what) {
        if (!cond) {
            System.out.println("FAIL " + what);
            System.exit(1);
        }
    }

    static long count(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String p = args[1];
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        props.setProperty("prepareThreshold", "1");
        props.setProperty("binaryTransfer", "true");
        props.setProperty("stringtype", "unspecified");
        try (Connection c = DriverManager.getConnection(url, props)) {
            c.setAutoCommit(true);
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + p + "_acct (id, owner, balance) VALUES (?, ?, ?)")) {
                for (int i = 1; i <= 5; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "owner" + i);
                    ps.setBigDecimal(3, new BigDecimal("100.00"));
                    expect(ps.executeUpdate() == 1, "insert acct " + i);
                }
            }
            // Generated keys (INSERT ... RETURNING) from one reused server-side statement.
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + p + "_item (name, payload, qty) VALUES (?, ?, ?)", new String[] {"id"})) {
                for (String name : new String[] {"j-a", "j-b", "j-c"}) {
                    ps.setString(1, name);
                    ps.setBytes(2, new byte[] {0, 1, 2, (byte) 254, (byte) 255});
                    ps.setInt(3, 4);
                    ps.executeUpdate();
                    try (ResultSet keys = ps.getGeneratedKeys()) {
                        keys.next();
                        emit("generated key " + name + " " + keys.getInt(1));
                    }
                }
            }
            // Untyped: a string parameter into an int and a numeric column.
            try (PreparedStatement ps = c.prepareStatement("UPDATE " + p + "_item SET qty = ? WHERE name = ?")) {
                ps.setString(1, "41");
                ps.setString(2, "j-a");
                emit("untyped update " + ps.executeUpdate());
            }
            // A reused SELECT: binary results, no Describe after the first executions.
            try (PreparedStatement ps = c.prepareStatement("SELECT a.id, owner, balance, payload FROM " + p + "_acct a LEFT JOIN " + p
                    + "_item i ON i.qty = a.id WHERE a.id >= ? ORDER BY a.id")) {
                for (int k = 0; k < 4; k++) {
                    ps.setInt(1, k);
                    int n = 0;
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            n++;
                        }
                    }
                    emit("select rows " + n);
                }
            }

            // Outside autocommit: BEGIN goes in one pipeline with the first statement.
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("UPDATE " + p + "_acct SET balance = balance + ? WHERE id = ?")) {
                ps.setBigDecimal(1, new BigDecimal("-7.50"));
                ps.setInt(2, 1);
                ps.executeUpdate();
                ps.setBigDecimal(1, new BigDecimal("7.50"));
                ps.setInt(2, 2);
                ps.executeUpdate();
                c.commit();
                // Rolled back: nothing of it may stay anywhere.
                ps.setBigDecimal(1, new BigDecimal("1000"));
                ps.setInt(2, 3);
                ps.executeUpdate();
                c.rollback();
                expect(count(c, "SELECT count(*) FROM " + p + "_acct WHERE balance > 500") == 0, "a rolled-back update is visible");
                c.rollback();
            }
            // A batch in a transaction (the driver pipelines it), committed.
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + p + "_item (name, qty) VALUES (?, ?)")) {
                for (int i = 0; i < 20; i++) {
                    ps.setString(1, "batch-" + i);
                    ps.setInt(2, i);
                    ps.addBatch();
                }
                emit("batch " + ps.executeBatch().length);
                c.commit();
            }
            // A constraint error: the transaction is rolled back whole.
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + p + "_acct (id, owner, balance) VALUES (?, ?, ?)")) {
                try (Statement st = c.createStatement()) {
                    st.executeUpdate("UPDATE " + p + "_acct SET balance = balance + 1 WHERE id = 4");
                }
                ps.setInt(1, 6);
                ps.setString(2, "owner1");
                ps.setBigDecimal(3, BigDecimal.ONE);
                ps.executeUpdate();
                expect(false, "a unique violation was accepted");
            } catch (SQLException e) {
                emit("unique violation " + e.getSQLState());
                c.rollback();
            }
            // Savepoints: the part rolled back to is gone, the rest commits.
            try (Statement st = c.createStatement()) {
                st.executeUpdate("UPDATE " + p + "_acct SET balance = balance + 3 WHERE id = 5");
                Savepoint s = c.setSavepoint("s1");
                st.executeUpdate("UPDATE " + p + "_acct SET balance = balance + 300 WHERE id = 5");
                c.rollback(s);
                st.executeUpdate("INSERT INTO " + p + "_item (name, qty) VALUES ('after-savepoint', 5)");
                c.commit();
            }
            c.setAutoCommit(true);
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT id, owner, balance FROM " + p + "_acct ORDER BY id")) {
                while (rs.next()) {
                    emit("acct " + rs.getInt(1) + " " + rs.getString(2) + " " + rs.getBigDecimal(3));
                }
            }
            try (Statement st = c.createStatement();
                    ResultSet rs = st.executeQuery("SELECT id, name, md5(payload), qty, ref IS NOT NULL FROM " + p + "_item ORDER BY id")) {
                while (rs.next()) {
                    emit("item " + rs.getInt(1) + " " + rs.getString(2) + " " + rs.getString(3) + " " + rs.getInt(4) + " " + rs.getBoolean(5));
                }
            }
        }
        emit("done");
    }
}
