(ns weir.gateway
  "A client of weir's HTTP/JSON gateway (/v1, src/gateway in weir). Plain
  clj-http and cheshire, no Jepsen, so it loads and runs anywhere Debian's
  Clojure jars are. Every call returns a map: the decoded body, plus
  :status; failures are classified so a Jepsen client can tell a definite
  failure (:fail, 4xx: the gateway promises nothing happened) from an
  indefinite one (:info, 5xx or no answer: it may have happened)."
  (:require [cheshire.core :as json]
            [clj-http.client :as http]))

(def default-timeout-ms
  "How long one HTTP call may take before its outcome counts as unknown."
  10000)

(defn node-url
  "The gateway's base URL on a host, e.g. (node-url \"10.77.0.11\" 8080)."
  [host port]
  (str "http://" host ":" port))

(defn- outcome
  "What a call's status means for an operation: :ok, :fail or :info."
  [status]
  (cond (<= 200 status 299) :ok
        (<= 400 status 499) :fail
        :else               :info))

(defn- call
  [method url body {:keys [timeout-ms] :or {timeout-ms default-timeout-ms}}]
  (try
    (let [response (http/request
                     (cond-> {:method             method
                              :url                url
                              :throw-exceptions   false
                              :socket-timeout     timeout-ms
                              :conn-timeout       timeout-ms
                              :headers            {"Accept" "application/json"}}
                       body (assoc :body (json/generate-string body)
                                   :content-type :json)))
          status   (:status response)
          decoded  (try (json/parse-string (:body response) true)
                        (catch Exception _ {:raw (:body response)}))]
      (assoc (if (map? decoded) decoded {:body decoded})
             :status  status
             :outcome (outcome status)))
    (catch java.net.SocketTimeoutException e
      {:status nil :outcome :info :error {:code "TIMEOUT" :message (str e)}})
    (catch java.net.ConnectException e
      ;; Nothing was sent: a definite failure.
      {:status nil :outcome :fail :error {:code "CONNECT" :message (str e)}})
    (catch java.io.IOException e
      {:status nil :outcome :info :error {:code "IO" :message (str e)}})))

(defn health
  [base & [opts]]
  (call :get (str base "/v1/health") nil opts))

(defn create-topic!
  "Creates a topic; an existing one is fine (:outcome :ok, :existed true)."
  [base topic partitions & [{:keys [replication-factor] :as opts}]]
  (let [r (call :post (str base "/v1/topics")
                (cond-> {:name topic :partitions partitions}
                  replication-factor (assoc :replication_factor replication-factor))
                opts)]
    (if (= "TOPIC_ALREADY_EXISTS" (get-in r [:error :code]))
      (assoc r :outcome :ok :existed true)
      r)))

(defn send!
  "Sends one string value to a topic's partition with acks (\"all\" by
  default). On :ok, :offset is where it landed (nil for acks \"none\")."
  [base topic partition value & [{:keys [acks key] :or {acks "all"} :as opts}]]
  (let [record (cond-> {:value (str value) :partition partition}
                 key (assoc :key (str key)))
        r      (call :post (str base "/v1/topics/" topic "/records")
                     {:records [record] :acks acks} opts)
        result (first (:results r))]
    (cond-> r
      (:error result) (assoc :error (:error result))
      result          (assoc :offset (:offset result)
                             :partition (:partition result)))))

(defn fetch
  "Records of a topic's partition from offset: {:records [{:offset :value
  ...}] :next_offset :high_watermark}. wait-ms > 0 long-polls."
  [base topic partition offset & [{:keys [wait-ms max-bytes] :or {wait-ms 0} :as opts}]]
  (call :get (str base "/v1/topics/" topic "/partitions/" partition
                  "/records?offset=" offset "&wait_ms=" wait-ms
                  (when max-bytes (str "&max_bytes=" max-bytes)))
        nil
        (update opts :timeout-ms #(or % (+ default-timeout-ms wait-ms)))))

(defn read-all
  "Every record of a partition from offset 0 up to its high watermark, as
  [offset value] pairs; nil if a fetch fails."
  [base topic partition & [opts]]
  (loop [offset 0, acc []]
    (let [r (fetch base topic partition offset opts)]
      (when (= :ok (:outcome r))
        (let [acc (into acc (map (juxt :offset :value)) (:records r))]
          (if (>= (:next_offset r) (:high_watermark r))
            acc
            (recur (:next_offset r) acc)))))))

;; Group consumers. The gateway keeps a consumer instance per subscriber
;; (membership, heartbeats, rebalances, positions); the client creates it,
;; polls it and deletes it. Group names here are plain [A-Za-z0-9._-].

(defn- consumers-url
  [base group]
  (str base "/v1/groups/" group "/consumers"))

(defn subscribe!
  "Joins group with a new consumer instance reading topics. On :ok,
  :consumer is the instance's id and :assignment its partitions
  [{:topic :partition :position}]. auto-commit? commits what a poll handed
  out at the start of the next poll (at least once)."
  [base group topics & [{:keys [auto-commit? session-timeout-ms idle-timeout-ms reset] :as opts}]]
  (call :post (consumers-url base group)
        (cond-> {:topics (vec topics)}
          (some? auto-commit?) (assoc :auto_commit (boolean auto-commit?))
          session-timeout-ms   (assoc :session_timeout_ms session-timeout-ms)
          idle-timeout-ms      (assoc :idle_timeout_ms idle-timeout-ms)
          reset                (assoc :reset reset))
        opts))

(defn consumer-poll
  "The next records of a consumer instance: {:records [{:topic :partition
  :offset :value ...}] :assignment [...] :generation}. wait-ms > 0
  long-polls."
  [base group consumer & [{:keys [wait-ms] :or {wait-ms 0} :as opts}]]
  (call :get (str (consumers-url base group) "/" consumer "/records?wait_ms=" wait-ms)
        nil
        (update opts :timeout-ms #(or % (+ default-timeout-ms wait-ms)))))

(defn consumer-commit!
  "Commits a consumer instance's positions: everything it handed out."
  [base group consumer & [opts]]
  (call :post (str (consumers-url base group) "/" consumer "/commit") {} opts))

(defn unsubscribe!
  "Deletes a consumer instance: it leaves its group, which rebalances."
  [base group consumer & [opts]]
  (call :delete (str (consumers-url base group) "/" consumer) nil opts))

(defn describe-group
  [base group & [opts]]
  (call :get (str base "/v1/groups/" group) nil opts))
